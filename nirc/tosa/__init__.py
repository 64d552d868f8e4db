"""TOSA 1.0 for Vela: nirc's int8 TFLite lifted to TOSA so one-input functions become TABLE ops.

``lift`` translates; ``reference`` runs the TOSA reference model (tosa-tools) as the
int8 oracle of the lifted graph. Needs the ``tosa`` extra (``pip install tosa-tools``).
"""
