"""Kubernetes-side pieces of the client: manifest builders, CRD validation, cluster calls.

Client side only (never imported by a rank). Builders return plain dicts; the
``kubernetes`` client is imported only by :mod:`fi_dist.k8s.cluster` when a job is
actually sent to a cluster.
"""
