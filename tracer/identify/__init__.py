"""Identification: load a suspect (``suspect``), score every customer (``scoring``), decide and record (``identify``)."""

from .identify import identify_model, identify_predictor, record_identification
from .result import Candidate, IdentificationResult
from .scoring import METHOD, IssuedCustomer, issued_customers, score_answers
from .suspect import SuspectModel

__all__ = ["identify_model", "identify_predictor", "record_identification", "Candidate", "IdentificationResult",
           "SuspectModel", "IssuedCustomer", "issued_customers", "score_answers", "METHOD"]
