#!/bin/sh
# Durable-accept benchmark of the relay vs a private Postfix (see run.py). Run as root from the checkout.
cd "$(dirname "$0")/../.." && exec .venv/bin/python bench/relay/run.py "$@"
