"""txbench: the benchmark of txfastcgi against the php-fpm front-ends it is compared with."""
