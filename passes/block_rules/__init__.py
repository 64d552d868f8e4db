"""The rule library of ``substitute-blocks``: each rule a pattern, a check that says why it refuses,
and candidate rewrites (see :mod:`nirc.passes.block_rules.base`).

A package of its own because these are not passes: :mod:`nirc.passes.substitute_blocks` runs them
and keeps a candidate only when Vela's estimate improves. ``kernels`` holds the exact kernel algebra
(composition, regrouping, space-to-depth) the rules share.
"""
