"""The pure core: funnel model, loader, durations, checks and (later) step decisions.

Nothing in this package touches a database, a broker, the network or the clock
of the machine: it is plain Python over plain data, so the hard rules are cheap
to test exhaustively. Shells and services call into it; it calls nothing back.
"""
