"""The ``onebit`` command line: one parser, one module per subcommand."""
