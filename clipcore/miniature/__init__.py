"""A miniature of MUSIC for the quick start, the experiments and tests: eleven sampled
General MIDI instruments in overlapping registers (:mod:`~clipcore.miniature.sound`),
pictured by drawings varied in pose, colour and background
(:mod:`~clipcore.miniature.drawings`), as clips in train, validation and test splits
(:mod:`~clipcore.miniature.world`). No production code imports it."""
