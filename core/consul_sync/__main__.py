from consul_sync.cli import main

raise SystemExit(main())
