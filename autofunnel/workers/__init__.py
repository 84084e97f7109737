"""The Celery shell: the app, its one task, and the worker and scheduler processes.

Only `autofunnel.cli` imports this package; services know nothing of Celery (the
scheduler loop takes a hand-out function). Tasks carry ids of committed
deliveries, never delays (`eta`/`countdown` are not used): the schedule lives in
the database.
"""
