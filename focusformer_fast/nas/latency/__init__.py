"""Hardware latency of subnets, by job: :mod:`.device` (what a latency depends on),
:mod:`.timing` (timing one call), :mod:`.table` (the lookup table's format and predictor, which
measures nothing), :mod:`.build` (measuring a table) and :mod:`.validate` (checking it against
whole subnets). This package file imports none of them: the cost functions read tables without
loading the measuring code.
"""
