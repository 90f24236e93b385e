"""Where the experiment matrix and key used to live: the matrix is the study layer's (`fmae.study`), the
key the typed config's (`fmae.run_spec`). Kept so importers of the earlier layout read on.
"""

from fmae.run_spec import config_key  # noqa: F401
from fmae.study import expand_matrix  # noqa: F401
