"""Schedulers: who runs next. `api` is what a scheduler reads of the requests (shared by every engine)."""
