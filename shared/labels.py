"""Which labels place work on a node: the operator's, plus the few a node may set itself.

A node's certificate proves who it is, not what it may run: labels it reports
about itself (in hello) would let it claim another zone's work and its
secrets. Like Kubernetes' NodeRestriction, placement uses the operator's labels
(join token, `edgectl node label`), and a reported label only for the keys
the cloud's `node_label_keys` lists; the operator's value wins on a clash.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def placement_labels(
    operator: Mapping[str, str], reported: Mapping[str, str], self_settable: Collection[str]
) -> dict[str, str]:
    allowed = {k: v for k, v in reported.items() if k in self_settable}
    return {**allowed, **operator}
