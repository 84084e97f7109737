"""Use cases: one function per thing a user or the scheduler does, each owning its
unit of work and taking a Clock; shells call these and nothing below them."""
