"""Embedding: load the base model, fine-tune a customer's codeword in, export to ONNX, land with its record."""

from .issue import IssueReport, Issuer, read_customer_list, recover_pending

__all__ = ["Issuer", "IssueReport", "recover_pending", "read_customer_list"]
