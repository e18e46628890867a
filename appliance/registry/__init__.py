"""The consortium registry: the member model (model.py), the operator's TUF repository, and the client."""
