from pkrelay.cli import main

raise SystemExit(main())
