"""The fingerprint: key sets and codewords (``probes``: noise probe sets; ``pool``: the natural-mix key pool; ``keysets``:
which a copy carries; ``revelation``: which keys probing has shown) and the statistics that score them (``stats``)."""

from .probes import ProbeSet, codeword, codewords, customer_labels, make_probe_set, probe_set_ids, trigger_commitment
from .stats import (
    binomial_tail,
    binomial_tails,
    holm,
    key_groups,
    log10_tail,
    poisson_binomial_log10_tail,
    poisson_binomial_log10_tails,
    poisson_binomial_tail,
    poisson_binomial_tails,
)

__all__ = ["ProbeSet", "codeword", "codewords", "customer_labels", "make_probe_set", "probe_set_ids", "trigger_commitment",
           "binomial_tail", "binomial_tails", "holm", "log10_tail", "key_groups", "poisson_binomial_log10_tail",
           "poisson_binomial_log10_tails", "poisson_binomial_tail", "poisson_binomial_tails"]
