"""`tracer evaluate`: attack an issued copy and identify what is left (``attacks``, ``suite``), count false
accusations on independent models (``false_accusation``), and report it all (``tables``, ``html``)."""

from .attacks import ATTACKS, GROUPS, attack_names, resolve_attacks
from .evaluation import Evaluation, record_evaluation
from .false_accusation import FalseAccusationResult, IndependentModel, false_accusation_study
from .suite import AttackResult, SuiteResult, run_suite

__all__ = ["ATTACKS", "GROUPS", "attack_names", "resolve_attacks", "AttackResult", "SuiteResult", "run_suite",
           "FalseAccusationResult", "IndependentModel", "false_accusation_study", "Evaluation", "record_evaluation"]
