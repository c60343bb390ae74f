from npu_retu.cli import main

raise SystemExit(main())
