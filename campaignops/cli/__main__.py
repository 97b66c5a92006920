"""`python -m campaignops.cli`: the same command as `campaignops`."""

from campaignops.cli import main

main()
