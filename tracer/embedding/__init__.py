"""Embedding: load the base model, fine-tune a customer's codeword in, export to ONNX, land with its record."""

from .customers import read_customer_list
from .issue import Issuer, IssueReport, recover_pending

__all__ = ["Issuer", "IssueReport", "recover_pending", "read_customer_list"]
