"""synthmed: synthetic medical images for scarce, imbalanced labelled data.

Pipeline (one subpackage per step, no step imports a later one):
data -> generators -> selection -> metrics -> downstream -> report, with a thin CLI on top.
"""

__version__ = "0.1.0"
