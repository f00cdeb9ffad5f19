"""The application layer: the `inkwell` command hub, `inkwell up` and its supervisor."""
