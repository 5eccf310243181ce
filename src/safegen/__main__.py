from safegen.cli import main

raise SystemExit(main())
