import sys

from customer_store.cli import main

sys.exit(main())
