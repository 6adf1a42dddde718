"""Evolution: rebuild smaller candidates of a served model (structure, distillation, measurement)."""
