"""The hang doctor's shared core: what ranks record and how the client reads it back.

* :mod:`~fi_dist.hang.ledger`: each rank's collective ledger, a small memory-mapped file
  in the job's *hang directory* (per process group: collectives issued and completed,
  the op and call site of the last one), readable from outside at any time, also after
  the rank died;
* :mod:`~fi_dist.hang.collect`: ask every rank of a node for its Python stacks (a
  signal to a waiting thread in the rank; ``faulthandler`` when that thread cannot run)
  and read the ledgers;
* :mod:`~fi_dist.hang.report`: merge the stacks DDT-style (ranks grouped by identical
  stack, where they part ways marked) and diagnose which rank is behind or which
  collectives disagree (pure functions);
* :mod:`~fi_dist.hang.watch`: the supervisor's no-progress watch (``--hang-timeout``)
  and its capture when a rank fails inside a collective.

The rank side (installing the ledger around ``torch.distributed`` and the dump thread)
is :mod:`fi_dist.runtime.hang`. Standard library only: imported by the client side,
the node agent and every rank. See docs/hangs.md.
"""
