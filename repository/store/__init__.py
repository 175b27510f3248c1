"""The repository proper: customers written as rows and read back whole.

The repository and its async face, the JSON-to-rows mapping, reads, search queries,
newest-wins rules, child rows and bulk merges. :mod:`repository` exports the repository
itself; this face adds what the command line needs beside it: walking every customer (an
export) and the limits a search argument is checked against.
"""

from repository.store.customers import iter_customers
from repository.store.mapping import FOLD_LIMIT, fold
from repository.store.queries import MAX_METADATA_DEPTH, MAX_METADATA_TERMS, MAX_PAGE_SIZE

__all__ = [
    "FOLD_LIMIT",
    "MAX_METADATA_DEPTH",
    "MAX_METADATA_TERMS",
    "MAX_PAGE_SIZE",
    "fold",
    "iter_customers",
]
