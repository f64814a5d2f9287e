from fedmpi.cli import entry

entry()
