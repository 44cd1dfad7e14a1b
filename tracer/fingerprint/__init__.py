"""The fingerprint: probe sets and codewords (``probes``) and the statistics that score them (``stats``)."""

from .probes import ProbeSet, codeword, codewords, make_probe_set, probe_set_ids, trigger_commitment
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

__all__ = ["ProbeSet", "codeword", "codewords", "make_probe_set", "probe_set_ids", "trigger_commitment",
           "binomial_tail", "binomial_tails", "holm", "log10_tail", "key_groups", "poisson_binomial_log10_tail",
           "poisson_binomial_log10_tails", "poisson_binomial_tail", "poisson_binomial_tails"]
