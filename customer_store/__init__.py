"""Entry points of the customer store: the ``customer-store`` command line."""
