"""TEMPORARY (engines branch, until the `sched` branch lands its dispatch table): the compiled scheduler
functions every engine calls, `prerank`, `key`, `observe`, `observes`, `ranks_with_side_effects`,
`keys_static`, `key_less`, over a `RequestView` (lapsbench.schedulers.api). Engines bind this module by exactly
one line, `from lapsbench.schedulers import dispatch`."""

from lapsbench.policies.compiled import (  # noqa: F401  (re-exported)
    key,
    key_less,
    keys_static,
    observe,
    observes,
    prerank,
    ranks_with_side_effects,
)
