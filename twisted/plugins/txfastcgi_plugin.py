from twisted.application.service import ServiceMaker

fastcgiProxy = ServiceMaker(
    "txfastcgi FastCGI proxy",
    "txfastcgi.tap",
    "Serve a PHP application through php-fpm (FastCGI)",
    "fastcgi-proxy",
)
