from fedcond.cli.main import main

raise SystemExit(main())
