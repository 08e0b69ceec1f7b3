from msgvoice.cli import main

raise SystemExit(main())
