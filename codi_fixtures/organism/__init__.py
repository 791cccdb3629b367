"""The bundled model organism: a synthetic arithmetic task and tiny-CODI training."""
