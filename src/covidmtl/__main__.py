from covidmtl.cli import main

raise SystemExit(main())
