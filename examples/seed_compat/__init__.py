"""The seed design doc's examples, with only the import changed."""
