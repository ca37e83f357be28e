import os
import sys

if os.environ.get("XSW"):
    sys.setswitchinterval(float(os.environ["XSW"]))
from server.cli import main

main()
