"""The fingerprint: probe sets and codewords (``probes``) and the statistics that score them (``stats``)."""

from .probes import ProbeSet, codeword, codewords, customer_labels, make_probe_set, probe_set_ids, trigger_commitment
from .stats import binomial_tail, binomial_tails, holm, log10_tail

__all__ = ["ProbeSet", "codeword", "codewords", "customer_labels", "make_probe_set", "probe_set_ids", "trigger_commitment",
           "binomial_tail", "binomial_tails", "holm", "log10_tail"]
