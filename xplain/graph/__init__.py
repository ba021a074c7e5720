"""Stage 2, the converted graph: the Model wrapper, rectifier rules and LRP rules applied to it."""
