"""What every stage runs on: errors, atomic writes, artifact kinds and files, locks, jobs over several processes,
compile counting, padded shapes and the named choices the command line offers."""
