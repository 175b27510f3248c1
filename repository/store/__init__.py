"""The repository proper: customers written as rows and read back whole.

The repository and its async face, the JSON-to-rows mapping, reads, search queries,
newest-wins rules, child rows and bulk merges.
"""
