"""Engine plug-ins: the backdoor attack, the initial sync of derived weights, experiment trackers."""
