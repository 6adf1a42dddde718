"""The Faust app and its agents; the streaming maths live beside them as plain objects."""
