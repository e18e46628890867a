"""The consortium's code of practice, checkable: the code as data, outside probes, inside checks, reports."""
