import sys

from ddpo_hub.training.cli import train_main

sys.exit(train_main())
