"""The study's statistics: log-linear fits, frequency statistics, figures and the report."""
