"""Studies: a user's corpus counts x a user's models' per-concept scores -> the study's fits, figures, report.

A study (``params.yaml`` ``studies.<name>``, stage ``study@<name>``) declares where its frequencies come
from, which models, datasets and tasks it scores, and its statistics (``spec``); the join of counted concepts
and evaluated classes is done once and reported (``join``); fits and output files (``run``); figures
(``figures``).

Public API::

    check_study(name, entry, corpora=..., image_corpora=..., thresholds=..., models=..., datasets=..., analysis=...)
    run_study(study) -> (fits, points, coverage)
    write_study(name, fits, points, coverage) -> reports/tables/studies/<name>
    read_study_fits() -> every study's fits (for log_linear_fits.csv)
    resolve_spellings(counts, keys, preferred) -> one count per (count_type, key)
"""

from helpers.analysis.studies.join import COVERAGE, STUDY_POINTS, StudyJoinError, join_counts, resolve_spellings
from helpers.analysis.studies.run import headline, read_study_fits, run_study, study_fits, write_study
from helpers.analysis.studies.spec import Study, check_study

__all__ = [
    "COVERAGE",
    "STUDY_POINTS",
    "Study",
    "StudyJoinError",
    "check_study",
    "headline",
    "join_counts",
    "read_study_fits",
    "resolve_spellings",
    "run_study",
    "study_fits",
    "write_study",
]
