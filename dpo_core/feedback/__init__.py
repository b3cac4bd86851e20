"""Stage 2, collect AI feedback: sample candidates from a pool of generators, judge, binarize into pairs."""
