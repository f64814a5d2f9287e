"""Tables and plots from run folders (``fedmpi report``)."""
