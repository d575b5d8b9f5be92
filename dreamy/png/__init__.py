"""PNG recipes: what every picture carries (A1111 ``parameters`` + Dreamy's JSON) and reading it back,
from Dreamy's own files and from other tools'.
"""
